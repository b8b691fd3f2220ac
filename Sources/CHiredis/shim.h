#ifndef FANFLOW_CHIREDIS_SHIM_H
#define FANFLOW_CHIREDIS_SHIM_H
#include <hiredis.h>

/* errstr is a char[128], which Swift sees as a tuple; hand it over as a pointer. */
static inline const char *fanflow_redis_errstr(const redisContext *c) { return c->errstr; }

#endif
