"""The bare PJSUA2 endpoint the floor programs start: one UDP transport on 127.0.0.1, the null
audio device, no logging, polled by the thread that created it (as the worker's SIP thread)."""

import pjsua2 as pj


def start_endpoint() -> tuple[pj.Endpoint, int]:
    """The started endpoint and the id of its SIP transport."""
    endpoint = pj.Endpoint()
    endpoint.libCreate()
    config = pj.EpConfig()
    config.uaConfig.threadCnt = 0
    config.uaConfig.mainThreadOnly = True
    config.logConfig.level = 0
    config.logConfig.consoleLevel = 0
    config.medConfig.noVad = True
    endpoint.libInit(config)
    transport_config = pj.TransportConfig()
    transport_config.port = 0
    transport_config.boundAddress = "127.0.0.1"
    transport_config.publicAddress = "127.0.0.1"
    transport = endpoint.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport_config)
    endpoint.libStart()
    endpoint.audDevManager().setNullDev()
    return endpoint, transport
