#!/bin/sh
# azd postprovision hook. Key Vault roles are Azure RBAC and main.bicep assigns them; a Managed
# HSM has its own local RBAC, which ARM cannot assign, so this grants the functions' identity
# the same least privilege there:
#   Managed HSM Crypto Service Release User (21dbd100-6940-42c2-9190-5d6cb909625c) on /keys
#   Managed HSM Crypto User (21dbd100-6940-42c2-9190-5d6cb909625b) on /keys/<control key> (sign)
#   "Shield key lifecycle" (custom: read, write, rotate, create) on /keys
# azd passes the Bicep outputs as environment variables.
set -eu

if [ "${SHIELD_USES_MANAGED_HSM:-false}" != "true" ]; then
  echo "postprovision: Key Vault Premium; its role assignments are in main.bicep"
  exit 0
fi

hsm="${SHIELD_KEYVAULT_NAME:?SHIELD_KEYVAULT_NAME is not set (run azd provision first)}"
principal="${SHIELD_FUNCTIONS_PRINCIPAL_ID:?SHIELD_FUNCTIONS_PRINCIPAL_ID is not set}"
control_key="${SHIELD_CONTROL_KEY_NAME:?SHIELD_CONTROL_KEY_NAME is not set}"
role_name="Shield key lifecycle"

if ! az keyvault role definition list --hsm-name "$hsm" --query "[?roleName=='$role_name'].name" -o tsv | grep -q .; then
  az keyvault role definition create --hsm-name "$hsm" --role-definition "{
    \"roleName\": \"$role_name\",
    \"description\": \"Read keys, create and rotate versions, update attributes and release policies.\",
    \"actions\": [],
    \"notActions\": [],
    \"dataActions\": [
      \"Microsoft.KeyVault/managedHsm/keys/read/action\",
      \"Microsoft.KeyVault/managedHsm/keys/write/action\",
      \"Microsoft.KeyVault/managedHsm/keys/rotate/action\",
      \"Microsoft.KeyVault/managedHsm/keys/create\"
    ],
    \"notDataActions\": []
  }" >/dev/null
fi

assign() {
  # $1 role name, $2 scope
  if az keyvault role assignment list --hsm-name "$hsm" --assignee-object-id "$principal" \
    --scope "$2" --role "$1" --query "[0].name" -o tsv | grep -q .; then
    echo "postprovision: $1 on $2 already assigned"
  else
    az keyvault role assignment create --hsm-name "$hsm" --assignee-object-id "$principal" \
      --assignee-principal-type ServicePrincipal --role "$1" --scope "$2" >/dev/null
    echo "postprovision: assigned $1 on $2"
  fi
}

assign "Managed HSM Crypto Service Release User" "/keys"
assign "Managed HSM Crypto User" "/keys/$control_key"
assign "$role_name" "/keys"
