"""Dataset preparation for prepare_data.py: raw videos -> short-GOP VP9 WebM files + manifests.

Modules, one concern each. None imports torch, DALI, pandas or rich at import time: prepare_data.py's worker
processes import run.py and transcode.py and should pay only for PyAV and numpy (tests/test_prepare.py checks):
    transcode.py  decode -> retime -> resize -> orient -> encode one video with PyAV (atomic write; the frame
                  count from the encoder's packets); the geometry and timing rules are pipeline/video.py's
    listing.py    what a layout reader gives: Source (one video and where its rows go), Listing, LayoutError
    layouts.py    find the source videos: detect the layout, list it (Kinetics CSVs + flat dirs, class folders,
                  ActivityNet JSON here; the next two elsewhere)
    ucf_hmdb.py   UCF101 and HMDB51 as distributed, with their official split files
    frames.py     3D-ResNets-PyTorch's JPEG frame folders and annotation JSON; one folder read as a video
    run.py        plan jobs, reuse valid outputs, run them in worker processes, write manifests
    report.py     the manifests, rejected.csv and prepare_report.json from the outcomes, and the summary table
    shards.py     --shard K/N: which videos a shard prepares, its locks, and the merge of the shards' results
    sample.py     the built-in synthetic raw dataset (docs/design.md#sample-dataset); its write_video is also the one
                  video writer of the tests and benchmarks
"""
