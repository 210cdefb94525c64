"""Pure translation between the Ollama API and the OpenAI API: no I/O, no Twisted, no globals.

Everything here is a function of its arguments (the clock is passed in), so it is tested with tables
and hypothesis rather than sockets.
"""
