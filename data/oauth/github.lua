-- GitHub OAuth app (and GitHub App user tokens): the web flow's code
-- exchange and, for expiring user tokens, the refresh grant.
-- https://docs.github.com/en/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps
--
-- The guest sends client_secret=NAME_CLIENT_SECRET (and, to refresh,
-- refresh_token=NAME_REFRESH_TOKEN); it gets NAME_ACCESS_TOKEN back and
-- uses "Authorization: Bearer NAME_ACCESS_TOKEN" on api.github.com.
return {
  token_url = "https://github.com/login/oauth/access_token",
  request = "form",
  secrets = { client_secret = "client_secret", refresh_token = "refresh_token" },
  api_hosts = { "api.github.com", "uploads.github.com" },
  api_header = "Authorization: Bearer {secret}",
  -- GitHub answers errors with status 200 and an "error" field; the body
  -- is a form unless the client asked for JSON: both arrive as a table.
  parse = function(resp, ctx)
    if type(resp) ~= "table" or resp.error or not resp.access_token then
      return nil
    end
    return {
      access_token = resp.access_token,
      refresh_token = resp.refresh_token,
      expires_in = tonumber(resp.expires_in),
    }
  end,
}
