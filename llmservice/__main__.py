from llmservice.cli import main

raise SystemExit(main())
