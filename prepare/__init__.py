"""Dataset preparation for prepare_data.py: raw videos -> short-GOP VP9 WebM files + manifests.

Modules, one concern each. None imports torch, DALI, pandas or rich at import time: prepare_data.py's worker
processes import run.py and transcode.py and should pay only for PyAV and numpy (tests/test_prepare.py checks):
    transcode.py  decode -> retime -> resize -> orient -> encode one video with PyAV (atomic write; the frame
                  count from the encoder's packets); the geometry and timing rules are pipeline/video.py's
    layouts.py    find the source videos: Kinetics CSVs + flat dirs, class folders, ActivityNet JSON
    run.py        plan jobs, reuse valid outputs, run them in worker processes, write manifests and the report
    sample.py     the built-in synthetic raw dataset (docs/design.md#sample-dataset); its write_video is also the one
                  video writer of the tests and benchmarks
"""
