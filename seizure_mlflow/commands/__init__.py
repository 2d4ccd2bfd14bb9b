"""The commands' orchestration: each module plans (every check) -> runs -> finishes; ``cli.py`` is argparse on top."""
