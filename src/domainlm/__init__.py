"""domainlm: raw domain text -> a domain-specialised pretrained encoder, and a measured verdict."""

__version__ = "0.1.0"
