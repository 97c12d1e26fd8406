from cutover.cli import main

raise SystemExit(main())
