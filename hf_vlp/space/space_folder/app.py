"""The entry point a Hugging Face Space runs (`app_file: app.py`): the hf-vlp demo from the installed package.

Everything lives in `hf_vlp.space` (installed with `pip install 'hf-vlp[space]'`, see requirements.txt); the model
comes from the Space variables `HF_VLP_MODEL` / `HF_VLP_REVISION` (or `--model` / `--revision`). Locally the same
app runs as `hf-vlp demo` or `python app.py --model FOLDER`.
"""

import sys

from hf_vlp.space.launch import main


if __name__ == "__main__":
    sys.exit(main())
