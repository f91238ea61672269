"""What every remote backend shares: retries, HTTP status mapping, stream parsing."""
