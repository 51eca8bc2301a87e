from vault_emulator.cli import main

raise SystemExit(main())
