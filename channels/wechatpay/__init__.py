"""WeChat Pay API v3 (Native payments): the adapter, its signing, and the channel's simulator."""
