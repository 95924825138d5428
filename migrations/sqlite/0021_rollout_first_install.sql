-- Whether the rollout installed its bundle's first release on a device: set
-- when the offer goes out, from the installed set of the device's last health
-- report and the rollouts the device finished (false while the server has no
-- health report). A rollback leaves such a device on the new release, since
-- nothing earlier was kept there, and does not wait for it to confirm.
ALTER TABLE rollout_devices ADD COLUMN first_install BOOLEAN NOT NULL DEFAULT FALSE;
