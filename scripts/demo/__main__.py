"""`python -m scripts.demo --work_dir demo [...]`: run the demo pipeline (see scripts/demo/pipeline.py)."""

import fire
from scripts.demo.pipeline import main

if __name__ == "__main__":
    fire.Fire(main)
