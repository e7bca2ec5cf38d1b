-- A generic OAuth 2.0 client-credentials flow (RFC 6749 section 4.4), with
-- refresh tokens when the server gives some (section 6).
--
-- This is a template: copy it to $NILBOX_HOME/oauth/<provider>.lua, set
-- token_url and api_hosts, then `nilbox oauth add NAME --script <provider>`.
-- The guest posts grant_type=client_credentials&client_id=...&
-- client_secret=NAME_CLIENT_SECRET and uses the access token it gets back
-- (the placeholder NAME_ACCESS_TOKEN) as "Authorization: Bearer ...".
return {
  token_url = "https://auth.example.com/oauth/token",
  request = "form",
  secrets = { client_secret = "client_secret", refresh_token = "refresh_token" },
  api_hosts = { "api.example.com" },
  api_header = "Authorization: Bearer {secret}",
  parse = function(resp, ctx)
    if ctx.status < 200 or ctx.status > 299 or type(resp) ~= "table" then
      return nil
    end
    if type(resp.access_token) ~= "string" then
      return nil
    end
    return {
      access_token = resp.access_token,
      refresh_token = resp.refresh_token,
      expires_in = tonumber(resp.expires_in),
    }
  end,
}
