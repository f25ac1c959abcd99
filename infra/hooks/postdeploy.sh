#!/bin/sh
# azd postdeploy hook: subscribes the `keyvault-events` function (Event Grid trigger) to the
# vault's key events. It runs after `azd deploy` because the subscription's endpoint is the
# function, which exists only once the code is deployed. Idempotent: an existing subscription is
# updated in place. Managed HSM sends no Event Grid events; there the rotation-schedule timer
# does the work.
set -eu

if [ "${SHIELD_USES_MANAGED_HSM:-false}" = "true" ]; then
  echo "postdeploy: Managed HSM sends no Event Grid events; rotation-schedule rotates keys"
  exit 0
fi

vault_id="${SHIELD_KEYVAULT_ID:?SHIELD_KEYVAULT_ID is not set (run azd provision first)}"
app_id="${AZURE_FUNCTION_APP_ID:?AZURE_FUNCTION_APP_ID is not set}"
name="shield-key-events"

az eventgrid event-subscription create \
  --name "$name" \
  --source-resource-id "$vault_id" \
  --endpoint-type azurefunction \
  --endpoint "$app_id/functions/keyvault-events" \
  --included-event-types Microsoft.KeyVault.KeyNearExpiry Microsoft.KeyVault.KeyExpired Microsoft.KeyVault.KeyNewVersionCreated \
  --max-delivery-attempts 30 \
  --event-ttl 1440 >/dev/null

echo "postdeploy: $name delivers key events of $vault_id to keyvault-events"
