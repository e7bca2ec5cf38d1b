-- Google OAuth 2.0 (installed and web applications): authorization code
-- (with PKCE) and refresh grants on oauth2.googleapis.com.
-- https://developers.google.com/identity/protocols/oauth2/native-app
--
-- The guest sends client_secret=NAME_CLIENT_SECRET (and
-- refresh_token=NAME_REFRESH_TOKEN to refresh); Google APIs then take
-- "Authorization: Bearer NAME_ACCESS_TOKEN".
return {
  token_url = "https://oauth2.googleapis.com/token",
  request = "form",
  secrets = { client_secret = "client_secret", refresh_token = "refresh_token" },
  api_hosts = { "*.googleapis.com" },
  api_header = "Authorization: Bearer {secret}",
  parse = function(resp, ctx)
    if ctx.status ~= 200 or type(resp) ~= "table" or not resp.access_token then
      return nil
    end
    -- A refresh answer has no refresh_token: the old one stays valid.
    return {
      access_token = resp.access_token,
      refresh_token = resp.refresh_token,
      expires_in = tonumber(resp.expires_in),
    }
  end,
}
