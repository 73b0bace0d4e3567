"""maitred: an admission-control reverse proxy for HTTP/1.1 backends.

Glossary (one word per idea, used everywhere in the code and docs):

limit      a number that bounds admission: max_concurrency, max_queue, ...
token      one seat at the backend; there are max_concurrency of them
acquire    ask the core for a token; release gives it back, exactly once
in-flight  requests holding a token (at the backend right now)
queue      requests waiting for a token, oldest first, for a bounded time
waiter     one request's claim: waiting in the queue, or holding a token
shed       a request turned away at once with 503 and a reason
drain      stop taking new work, finish what is in flight
upstream   the proxy's side towards the backend (connections, pool)
backend    the server maitred protects
"""

__version__ = "0.1.0"
