"""The loader backends, one module each; pipeline.build_loader imports the one a config names."""
