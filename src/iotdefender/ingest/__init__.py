"""Device metrics ingestion: reports in, datapoints and accepted/rejected replies out."""
