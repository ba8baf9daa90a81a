from encoderkit.cli import main

raise SystemExit(main())
