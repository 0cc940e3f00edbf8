"""The Flux API over HTTP: PostgREST-compatible routes, keys, rate limits, OpenAPI and the device status."""
