# The two commands of the README: `make demo` and `make test`. Both create .venv first.
.PHONY: demo test lint bench venv clean

venv:
	@bash scripts/bootstrap.sh

demo: venv
	HF_HUB_OFFLINE=1 IMGSEARCH_CLIP_MODEL=imgsearch-fmnist-lit-minilm .venv/bin/imgsearch demo

test: venv
	.venv/bin/ruff check .
	HF_HUB_OFFLINE=1 .venv/bin/python -m pytest

lint: venv
	.venv/bin/ruff check .

bench: venv
	HF_HUB_OFFLINE=1 .venv/bin/python bench/encode.py

clean:
	rm -rf .venv build *.egg-info
