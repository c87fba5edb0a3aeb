from forge_cli.main import main

raise SystemExit(main())
