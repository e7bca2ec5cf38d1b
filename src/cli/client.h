/* The daemon client moved to host/client.h (nilbox-desktop uses it too);
 * this forwarding header keeps the CLI's includes as they were. */
#ifndef NB_CLI_CLIENT_H
#define NB_CLI_CLIENT_H

#include "host/client.h"

#endif
