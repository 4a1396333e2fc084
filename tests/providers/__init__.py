"""Provider adapter tests: Lithic, Marqeta and Stripe payloads (the public fixtures in
../shared/fixtures/providers and variations of them) through the running server."""
