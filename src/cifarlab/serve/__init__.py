"""The serving side: ONNX Runtime + FastAPI, no torch.

    cifarlab serve --host 127.0.0.1 --port 8000

`create_app(settings)` (app.py) builds the API; `Predictor` (predictor.py) is the
preprocess -> infer -> postprocess path shared with `cifarlab predict`; `Settings`
(settings.py) reads `CIFARLAB_*` environment variables. Importing this package is cheap: the
submodules are imported where they are used.
"""
