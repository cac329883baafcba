from chatapi.cli import main

raise SystemExit(main())
