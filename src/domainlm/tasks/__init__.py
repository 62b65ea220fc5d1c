"""Tasks: labeled data read from files by a declarative mapping, and the table of task types.

Below both the corpus stage (decontamination asks the tasks for their dev/test text) and the
evaluate stage (which fine-tunes on them). Modules: `types` (the task-type table), `readers`
(files to records), `mapping` (records to checked examples, by the recipe's fields), `load`
(examples to a `Task` with its splits and notes), `tagging` (IO / BIO / BIOES), `metrics` (every
metric as sums of per-example statistics).

Nothing is imported here, so `domainlm.config` can read the type table without loading the rest.
"""
