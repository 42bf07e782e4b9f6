from imgsearch.cli import main

raise SystemExit(main())
