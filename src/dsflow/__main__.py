from dsflow.cli import main

raise SystemExit(main())
