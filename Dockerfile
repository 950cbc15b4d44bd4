# vmscatter coordinator and agents in one image; docker-compose.yml runs a coordinator, one source
# host and three target hosts from it. There is no build step: tsx runs the TypeScript sources.
# Untested here (no Docker engine on the project's machines): see docs/operations.md.

# Dependencies, with the compilers native addons need (raw-socket builds with node-gyp).
FROM node:20-bookworm AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev && npm cache clean --force

FROM node:20-bookworm-slim
WORKDIR /app
ENV NODE_ENV=production
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY bin ./bin
COPY src ./src
COPY config ./config
# The coordinator's job state (a volume in docker-compose.yml).
RUN mkdir -p /var/lib/vmscatter && chown node:node /var/lib/vmscatter
USER node
EXPOSE 7400 7401 7402
ENTRYPOINT ["node", "--initial-old-space-size=256", "bin/vmscatter.js"]
CMD ["--help"]
