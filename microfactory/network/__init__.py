"""The network of shops: this shop's identity, profile, signed capacity report and pushes;
and (network.hub) hubs that take, mirror and route on the shops' reports."""
