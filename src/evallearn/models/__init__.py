"""Loading base pipelines (hub id, local folder, toy world) and building tiny random ones."""
