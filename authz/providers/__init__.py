"""Provider adapters: one module per card platform (Lithic, Marqeta, Stripe Issuing) that
authenticates the platform's requests its own way, maps its payloads to the canonical
``AuthorizationRequest`` and lifecycle events, calls the same decision core as the native API and
answers in the platform's format. Only these modules know a provider's field names."""
