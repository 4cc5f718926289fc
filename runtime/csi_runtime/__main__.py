from csi_runtime.cli import main

raise SystemExit(main())
