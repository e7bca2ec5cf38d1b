/* Handlers shared by the VM API files: api_vm.c (routes, lifecycle) and
 * api_vmio.c (exec and pty over WebSocket; protocol in docs/api.md). */
#ifndef NB_API_VMIO_H
#define NB_API_VMIO_H

#include "daemon/api.h"

/* GET /v1/vms/{name}/exec (WebSocket upgrade). */
void nb_api_vm_exec(nb_api_ctx_t *ctx);
/* GET /v1/vms/{name}/pty?rows=R&cols=C&term=T (WebSocket upgrade). */
void nb_api_vm_pty(nb_api_ctx_t *ctx);
/* Answers an error from the VM manager (adds 507 no-space and 503
 * unavailable to nb_api_reply_errno's mapping). Frees ctx. */
void nb_api_vm_reply_err(nb_api_ctx_t *ctx, int r, const char *msg);

#endif
