"""The benchmark harness (``make bench``): nginx with canned OpenAI replies, the daemon in front, wrk."""
