"""The shared service runtime: everything every OIH service needs, written once.

Server bootstrap (health, reflection, graceful stop), settings, database, interceptors
(authentication, authorization, errors, logging), the service-to-service token client,
and the event bus.
"""
