"""The HTTP filters between the connection manager and the router (Envoy's ``http_filters``):
``cache``, ``compressor`` (gzip), ``cors``, ``ext_authz``, ``fault``, ``grpc_web``, ``jwt_authn``,
``local_ratelimit``, ``lua`` and ``rbac``, run in the order configured, each reading its
``typed_per_filter_config`` override from the route, then the virtual host."""

from ._chain import EncoderChain as EncoderChain
from ._chain import FilterOutcome as FilterOutcome
from ._chain import HttpFilterChain as HttpFilterChain
from ._chain import RequestDecoder as RequestDecoder
from ._chain import RequestView as RequestView
from ._chain import ResponseEncoder as ResponseEncoder
from ._chain import ResponseHeaders as ResponseHeaders
from ._chain import encode_whole as encode_whole
from ._chain import sample as sample
from ._compressor import accepts_gzip as accepts_gzip
from ._fault import ResponseRateLimiter as ResponseRateLimiter
from ._fault import limits_response_rate as limits_response_rate
from ._local_ratelimit import TokenBucketState as TokenBucketState
