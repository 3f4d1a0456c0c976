"""The network of shops: signed capacity reports, hubs that mirror them, and routing."""
