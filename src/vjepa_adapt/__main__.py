from vjepa_adapt.cli import main

raise SystemExit(main())
