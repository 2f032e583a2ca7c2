from leadloop.cli import main

raise SystemExit(main())
