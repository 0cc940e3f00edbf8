"""Device drivers: one per device type, each speaking its device's protocol behind the `Driver` interface."""
