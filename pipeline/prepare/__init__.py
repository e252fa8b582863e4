"""Dataset preparation for prepare_data.py: raw videos -> short-GOP VP9 WebM files + manifests.

Modules, one concern each (none imports torch or DALI, so the package is cheap to import):
    transcode.py  decode -> resize -> encode one video with PyAV, atomic write, frame count of the output
    layouts.py    find the source videos: Kinetics CSVs + flat dirs, class folders, ActivityNet JSON
    run.py        plan jobs, reuse valid outputs, run them in worker processes, write manifests and the report
    sample.py     the built-in synthetic raw dataset (design.md section 6)
"""
