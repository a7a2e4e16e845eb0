"""Caption outputs: a room's finals pushed into the services where the audience already is (Zoom's caption URL,
YouTube Live's caption ingestion URL, Teams' CART link) and to any webhook.

contracts.py turns captions into each service's HTTP request; guard.py decides which URLs the server may send to
(it makes requests to URLs that users give it); sender.py delivers one output's captions in order, once each;
registry.py keeps each room's outputs. With replicas, shared.py is what the registry needs of the shared store
(Redis: server/cluster/outputs.py implements it, so that exactly one replica delivers each output).
"""
