"""Local mode: embedded database, migrations, the gateway that serves template.yaml, schedules and the CLI.

Development-only: nothing here ships in a Lambda artifact.
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = PROJECT_ROOT / "template.yaml"
