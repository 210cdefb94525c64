"""The ``inherit:fd=N`` endpoint (``ollama_proxy/endpoints.py``).  Every plugin scan imports this file, so the
parser's work is imported only when such an endpoint is actually parsed."""

from twisted.internet.interfaces import IReactorCore, IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _InheritParser:
    prefix = "inherit"

    def parseStreamServer(  # noqa: N802 -- Twisted's name
        self, reactor: IReactorCore, *args: object, **kwargs: object
    ) -> IStreamServerEndpoint:
        from ollama_proxy.endpoints import inherited_endpoint

        return inherited_endpoint(reactor, *args, **kwargs)


inherit = _InheritParser()
