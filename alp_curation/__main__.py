"""``python -m alp_curation INPUT.jsonl ...``: see ``alp_curation.cli``."""

from alp_curation.cli import main

raise SystemExit(main())
