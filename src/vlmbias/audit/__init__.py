"""The audit: dataset manifests, encoders, embedding, retrieval, disparity metrics and query sets."""
