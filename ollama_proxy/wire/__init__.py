"""What a client receives, one module per API family: the only code that turns a result, an error or a
broken stream into bytes for the client.

``answer.py`` holds the family-independent pieces (an :class:`~ollama_proxy.wire.answer.Answer` is a
status, headers and a body); ``ollama.py`` and ``openai.py`` say how each family words its errors and
ends a stream that broke.  The request (``site.ProxyRequest``) picks its family's :class:`Wire` once, from
the path, and writes every answer through it.  A new API family adds a module here and a ``Family``.
"""
