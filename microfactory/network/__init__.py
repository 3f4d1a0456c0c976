"""The network of shops: this shop's identity, profile, signed capacity report and pushes."""
