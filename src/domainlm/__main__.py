from domainlm.cli import main

raise SystemExit(main())
